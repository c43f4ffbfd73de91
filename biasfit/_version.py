"""biasfit's version, and the oldest torch its compiled ops run with.

Read as text by setup.py (before torch or biasfit can be imported), so keep
both as plain string literals. TORCH_FLOOR is the stable-ABI version the
extension is compiled for (TORCH_TARGET_VERSION): one build runs under every
torch from it up, and the wheel requires torch >= it.
"""
__version__ = "0.1.0"
TORCH_FLOOR = "2.10"
