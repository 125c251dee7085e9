"""How a command meets its user: one error tree, one flag parser, one entry wrapper.

Every layer may import this package; it imports nothing of the project's.
"""
