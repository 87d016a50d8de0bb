"""The MemFactory applications: the ``memfactory`` command line and the Gradio workbench."""
