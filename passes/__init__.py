"""Graph rewrites, one a file. Each is a callable `graph -> PassResult`."""
