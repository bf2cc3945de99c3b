"""The Concrete GMVAE: preprocessing, network, likelihoods, training, evaluation, artifacts."""
