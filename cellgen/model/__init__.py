"""The SIREN auto-decoder: pure nn.Modules (decoder, latent codes, learned rotations), no I/O."""
