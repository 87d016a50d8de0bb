"""RMM's retrospective reflection: a trainable torch reranker (``module``), its training
settings (``config``), candidates and rewards (``candidates``) and Recall@k evaluation
(``evaluate``)."""
