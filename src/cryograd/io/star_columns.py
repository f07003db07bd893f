"""RELION STAR column names cryograd interprets, shared by the STAR reader and writer."""

from __future__ import annotations

__all__ = ["DEFAULT_AMPLITUDE_CONTRAST", "INTERPRETED_COLUMNS", "POSE_COLUMNS"]

# Particle columns cryograd reads into ParticleSet fields, or that describe optics (moved to
# data_optics when writing); every other particle column is kept in ``extra_columns``.
INTERPRETED_COLUMNS = frozenset(
    {
        "rlnImageName",
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginX",
        "rlnOriginY",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnCtfScalefactor",
        "rlnCtfDataAreCtfPremultiplied",
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        "rlnRandomSubset",
        "rlnClassNumber",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
        "rlnDetectorPixelSize",
        "rlnMagnification",
    }
)
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
# RELION's default when a file has no rlnAmplitudeContrast
DEFAULT_AMPLITUDE_CONTRAST = 0.1
