"""Where each tool lives: tool name → its module. A server imports only the modules of the tools
it serves, so a SQL-only server never loads the POI family's numpy, bm25s or faiss, nor
the image family's OpenCV.

A new tool family is a package of plug-ins, its settings and its extra; add its tools here.
"""

from __future__ import annotations

TOOL_MODULES: dict[str, str] = {
    # SQL family (extra: sql)
    "sql_query": "tool_servers.sql.sql_query",
    "list_tables": "tool_servers.sql.list_tables",
    "describe_table": "tool_servers.sql.describe_table",
    # local-life POI family (extra: poi)
    "search": "tool_servers.poi.search",
    "nearby": "tool_servers.poi.nearby",
    "poi_detail": "tool_servers.poi.poi_detail",
    "retrieve": "tool_servers.poi.retrieve",
    # image family (extra: image)
    "crop": "tool_servers.image.crop",
    "zoom": "tool_servers.image.zoom",
    "rotate": "tool_servers.image.rotate",
    "flip": "tool_servers.image.flip",
    "enhance": "tool_servers.image.enhance",
    "revisit": "tool_servers.image.revisit",
    "confirm": "tool_servers.image.confirm",
}

# The pip extra each family's dependencies come in, for the message when one is missing.
FAMILY_EXTRAS: dict[str, str] = {"tool_servers.sql": "sql", "tool_servers.poi": "poi", "tool_servers.image": "image"}

# Each family's settings class ("module:Class"), read from RLYARD_TOOLS_<FAMILY>_*.
FAMILY_SETTINGS: dict[str, str] = {
    "sql": "tool_servers.sql.settings:SqlSettings",
    "poi": "tool_servers.poi.settings:PoiSettings",
    "image": "tool_servers.image.settings:ImageSettings",
}
