"""The zoo: training, evaluation, the build pipeline and the weights registry."""
