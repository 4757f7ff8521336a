"""``dreamcore bench``: speed and memory of the guide's recipe through the real trainer, on SD1.5 shapes."""
