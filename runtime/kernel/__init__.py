"""The Hamming kernel: the cffi binding to csrc/ (knn, within, active_isa); and the
query-weighted distance that re-ranks a text search's candidates (`weighted`, numpy)."""
