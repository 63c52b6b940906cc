from mobench import hookimpl


@hookimpl
def register_methods(register):
    register.method("letters", object, "a second method called letters")
