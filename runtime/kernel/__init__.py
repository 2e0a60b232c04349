"""The Hamming kernel: the cffi binding to csrc/ (knn, within, active_isa)."""
