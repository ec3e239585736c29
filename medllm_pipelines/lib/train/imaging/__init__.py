"""Imaging models of the lesion scenario: segmentation (MONAI UNet/SegResNet) and lesion presence (MONAI ResNet/DenseNet).

As CONVENTIONS rule 7 and MONAI keep them apart: ``networks`` (``nn.Module``
builders, no Lightning), ``data`` (the curate stage's image rows as MONAI
dictionary datasets and Lightning data modules), ``systems`` (the Lightning
training systems), ``training`` (one seeded training that writes a loadable
model folder), ``predictor`` (loading that folder in a fresh process) and
``runs`` (one training inside an MLflow run, registered).
"""
