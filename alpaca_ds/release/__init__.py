"""Release assets with provenance: weight diffs, model and data cards, a release folder."""
