"""The shipped experiment configs (JSON/YAML). A package so that an installed toolbox
finds them by name: ``mgclip-run --config mgclip_cifar`` from any folder."""
