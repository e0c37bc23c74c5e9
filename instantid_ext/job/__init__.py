"""What one generation needs, host-neutral: the loaded resources, the face conditioning and
tokens, several people's layout, the face pass's plan, and a job that undoes every change it
makes. Host adapters (:mod:`instantid_ext.webui`) drive it; nothing here imports a host."""
