//! nginx: write the rendered files, `nginx -t`, graceful reload, restore, drain.
