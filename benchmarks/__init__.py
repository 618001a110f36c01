"""Small timing scripts (library benchmarks; results go to results/)."""
