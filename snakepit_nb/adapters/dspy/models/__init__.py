"""Language models for the DSPy adapter: the offline environment, the shipped fake model, and
the LM settings (a session variable) with the DSPy LM objects built from them.
"""
