"""Faces: detection and embeddings (insightface), the model packs, likeness scores and saved
identities. No host and no UNet here."""
