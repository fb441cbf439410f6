"""Release: model registry, pipeline runs, packaging into a Bento, deployment, lineage."""
