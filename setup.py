from setuptools import setup

setup(
    name="mgclip-toolbox",
    version="0.1.0",
    description="MG-CLIP (Mind the Gap, ICCV 2025) and CLIP baselines for class-incremental learning, PyCIL style",
    python_requires=">=3.9",
    packages=["models", "utils", "toolbox", "exps"],
    package_data={"exps": ["*.json", "*.yaml", "*.yml", "tables/*.yaml"]},
    py_modules=["main"],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "openai-clip>=1.0",
        "loralib>=0.1.2",
        "numpy",
        "tqdm",
        "pyyaml",
        "pillow",
        # openai-clip imports pkg_resources, which setuptools >= 81 no longer ships.
        # utils/clip_backbone.import_clip() also shims it, for forks that copy our files.
        "setuptools<81",
        "packaging",
        "filelock>=3.12",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.6"],
        "plots": ["matplotlib"],
        "corruptions": ["imagecorruptions>=1.1.2"],
        "openclip": ["open_clip_torch>=2.20"],
        "cluster": ["submitit>=1.5"],
    },
    entry_points={"console_scripts": ["mgclip-run=main:main"]},
)
