"""The local-life POI tool family: ``search`` (BM25), ``retrieve`` (MiniLM + FAISS), ``poi_detail``
and ``nearby`` over the POI corpus (extra: ``poi``; settings: ``RLYARD_TOOLS_POI_*``)."""
