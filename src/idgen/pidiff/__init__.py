"""PIDiff on SD1.5: identity-tailored fine-tuning (`train`) and W+ code editing (`edit`).

Import the submodules directly; this package imports nothing heavy so the CLI stays fast.
"""
