"""A Library: a code store bound to the model bundle that made its codes; indexing."""
