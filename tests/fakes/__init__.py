"""Small stand-ins for the real model files, generated inside the test suite."""
