"""perf/ab_configs_bs1.py: how a --config is read (the runs themselves need a GPU)."""

from __future__ import annotations

import pytest

from perf.ab_configs_bs1 import REPO, parse_config


def test_config_name_tree_and_environment():
    cfg = parse_config("name=fused LLM_FUSED_DECODE_ATTENTION=1 LLM_ONE_ROW_CONFIG=4,32,3")
    assert cfg == dict(name="fused", tree=str(REPO),
                       env={"LLM_FUSED_DECODE_ATTENTION": "1", "LLM_ONE_ROW_CONFIG": "4,32,3"})
    assert parse_config("name=old tree=/tmp/base") == dict(name="old", tree="/tmp/base", env={})


def test_config_without_a_name_is_refused():
    with pytest.raises(SystemExit, match="name="):
        parse_config("LLM_PDL=0")
