"""Model files on disk: where they are found, what each one is (checked from its tensors), and
their hashes. Nothing is loaded into a network here."""
