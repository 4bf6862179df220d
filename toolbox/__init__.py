"""The toolbox around the learners: configs from files, the method registry, the task loop,
run folders, data, reports and analysis. Nothing here is copied into a PyCIL fork (see
docs/forks.md); the plugin files live in ``utils/``."""
