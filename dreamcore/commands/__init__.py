"""The core commands of ``python -m dreamcore``; other areas keep theirs beside their code."""
