"""One module per dataset format; each offers ``read(src, *, report, ...) -> Dataset`` and/or
``write(dataset, out, *, report, overwrite, ...) -> Path``. ``instaseg.data.convert`` ties them together."""
