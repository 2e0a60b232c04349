"""The synthetic bioacoustic corpus (calls, backgrounds, captions) for tests and demos."""
