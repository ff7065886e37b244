"""Auto mode's search: the eval-score dictionary (`dictionary`), the solver (`solve`), the
finalists and the correction toward the target (`finalists`), the latency metric
(`latency`), saved score tables (`scores_io`), NNI-style layer selection (`config`), and
the run that ties them together for any registered scheme (`auto`)."""
