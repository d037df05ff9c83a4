"""Tool plug-ins: one module per tool, named after the tool."""
