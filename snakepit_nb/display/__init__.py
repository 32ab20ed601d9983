"""HTML renderings of snakepit_nb objects, for the library's rich reprs and the notebook's widgets.

A leaf room: it imports neither the engine nor the notebook layer. Every function takes an
object duck-typed by its public attributes and returns an HTML fragment, inline-styled with
JupyterLab's CSS variables (with fallbacks for nbconvert pages).
"""
