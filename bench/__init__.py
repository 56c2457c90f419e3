"""The benchmark of our deploy against the Helm-hooks deploy (`make bench`)."""
