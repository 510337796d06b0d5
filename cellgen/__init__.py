"""cellgen: generative modelling of time-lapse 3D cell shapes with SIREN auto-decoders."""

__version__ = "0.1.0"
