"""The image tool family: ``crop``, ``zoom``, ``rotate``, ``flip``, ``enhance`` and IMAgent's visual
reflection and confirmation, ``revisit`` and ``confirm``, over the images of a session (extra:
``image``; settings: ``RLYARD_TOOLS_IMAGE_*``; docs/image_tools.md)."""
