from feinschliff.cli import main

main()
