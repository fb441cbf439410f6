"""The ONE place the components' base image is pinned.

Built from the repository's Dockerfile (default target); kustomize pins the same tag
(k8s/base/kustomization.yaml) and tests/integration/test_k8s_manifests.py checks they agree::

    docker build -t ghcr.io/roadseg/roadseg-pipeline:0.1.0 .
"""

ROADSEG_IMAGE = "ghcr.io/roadseg/roadseg-pipeline:0.1.0"
