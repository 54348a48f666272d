from regplugins.cli import main

main()
