"""The tool server: one binary whose tools are plug-ins, picked by name per deployment."""
