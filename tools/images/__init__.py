"""Container images of llmstream: build plans, the Docker engine, and a local base image.

`python -m tools.images build` (what `make images` runs) builds inference, gateway and
operator images from the Dockerfiles in the component folders.
"""
