"""Data: episodes, HotpotQA and MemAgent loaders, RULER-HotpotQA haystack builder."""

from memfactory_core.data.episode import QA, Episode
from memfactory_core.data.haystack import (
    ParagraphPool,
    build_distractor_episodes,
    build_haystacks,
    format_documents,
)
from memfactory_core.data.hotpotqa import HotpotQARecord, iter_json_records, load_hotpotqa
from memfactory_core.data.loaders import FORMATS, detect_format, load_episodes
from memfactory_core.data.memagent_files import load_memagent_json, load_memagent_parquet

__all__ = [
    "FORMATS",
    "QA",
    "Episode",
    "HotpotQARecord",
    "ParagraphPool",
    "build_distractor_episodes",
    "build_haystacks",
    "detect_format",
    "format_documents",
    "iter_json_records",
    "load_episodes",
    "load_hotpotqa",
    "load_memagent_json",
    "load_memagent_parquet",
]
