from mobench import hookimpl


@hookimpl
def register_methods(register):
    register.method("not-callable", 42, "a factory that is not callable")
