from mobench import hookimpl


@hookimpl
def register_widgets(register):
    pass
