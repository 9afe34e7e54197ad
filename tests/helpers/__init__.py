"""What the tests share: paths and skip markers (paths), building a dataset (data), the simulator, CLI and tiny
models of the evaluation tests (evaluation, judge), the teacher of the generate tests (generation), the trainer's
launches (training), torch-only reference trainers (fsdp_reference, lora_reference) and the import probe
(imports). Fixtures live in tests/conftest.py. Importable as `helpers` because pyproject.toml puts tests/ on
pytest's path."""
