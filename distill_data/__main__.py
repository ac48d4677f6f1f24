"""``python -m distill_data ...`` is the ``distill-data`` command; torchrun starts it as
``torchrun --nproc_per_node=K -m distill_data build ...``."""

from distill_data.cli import main

if __name__ == "__main__":
    main()
