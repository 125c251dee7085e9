"""The model layer, shared by the apps: loading pipelines by one model name, generating
image pairs, scorers and the bundled toy model. Its modules arrive with the model-layer
issue; the package exists now so the layout of docs/ARCHITECTURE.md is whole."""
