"""Retrieval of topic memories for a question (the bank retriever, on a topic memory)."""

from __future__ import annotations

from memfactory_core.components.base import register
from memfactory_core.components.retriever import Retriever
from memfactory_core.memory.base import MemoryKind


@register
class TopicRetriever(Retriever):
    name = "topic_retriever"
    description = "Retrieve the topic summaries that best match the question (RMM)."
    memory = MemoryKind.TOPIC
